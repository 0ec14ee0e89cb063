"""kd's networks: one file per family, each factory `fn(num_classes) -> nn.Module` named by its YAML's `_target_`.

Every network maps images to logits with `model(x)`, and with `model(x, features=True)` also returns its
stage features (kd/models/features.py) for feature distillers; the plain call computes nothing extra.
"""
