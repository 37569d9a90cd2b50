"""tests.policy: the send policy — consent, unsubscribe links, SMS STOP, caps, quiet hours."""
