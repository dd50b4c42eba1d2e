"""Pure registry logic: models, naming rules, the approval state machine, endpoint
configuration rules, domain events and the use cases (:class:`~.registry.Registry`).

Nothing here imports grpc, SQLAlchemy, aiokafka or onnx; those live behind ``ports``.
"""
