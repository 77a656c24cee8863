"""UniRep training: data, losses, trainer and export to the saved-model format."""
__all__: list[str] = []
