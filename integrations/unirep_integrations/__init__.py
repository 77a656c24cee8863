"""UniRep integrations: vector databases, RAG frameworks and the inference server."""
__all__: list[str] = []
