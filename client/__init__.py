"""Device side: on-device reranker models, ClientApp handlers, device store, runtime."""
