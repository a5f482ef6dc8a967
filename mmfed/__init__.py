"""mmfed: federated, privacy-preserving multimodal learning."""

__version__ = "0.1.0"
