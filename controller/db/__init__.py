"""The controller's database layer: typed models, engines and migrations."""
