"""The paper's stages, one module each; every stage records a manifest in the run directory (`manifest`)."""
