"""activities: every side effect a journey asks for — delivery, profiles."""
