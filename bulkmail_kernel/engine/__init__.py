"""The sending engine: the throttle, the send loop and the background worker."""
