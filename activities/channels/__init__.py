"""activities.channels: one provider client per file, behind a small base class."""
