"""gRPC servicer of ``mlbus.trainer.v1.TrainerService`` and its protobuf converters."""
