"""panet_jax: PANet few-shot semantic segmentation in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy `panet_jax.predict` (callable module): no JAX/TF on import
    if name == "predict":
        import importlib

        return importlib.import_module("panet_jax.predict")
    raise AttributeError(f"module 'panet_jax' has no attribute {name!r}")
