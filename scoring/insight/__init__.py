"""DeepInsight on a synthetic CTR world: generate it, overfit a model on it, look inside."""
