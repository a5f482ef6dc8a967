"""Using a trained model at a site: load it, evaluate it, predict with it, export it."""
