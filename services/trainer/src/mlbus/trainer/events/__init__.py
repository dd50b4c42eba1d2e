"""Kafka side: the job-requested consumer and the status-event relay."""
