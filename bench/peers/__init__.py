"""The same endpoints written the way earlier versions of this service were."""
