"""The worker's pure logic: datatypes, tensor codecs, signature checks and dynamic batching.

No grpc, aiokafka or onnxruntime imports here; adapters and the api package translate.
"""
