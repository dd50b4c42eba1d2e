"""Pure routing and deployment logic of the router (no grpc, aiokafka or process imports)."""
