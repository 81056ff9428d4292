"""Cloud side: Flower ServerApp, cloud training and distillation, retrieval services."""
