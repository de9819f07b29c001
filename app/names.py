"""Names the settings validate against, kept here so that app/settings.py (the ground
floor) imports nothing above it. The modules that own them check they agree:
app/face/registry.py's ENCODER_MODELS has exactly these keys and app/face/views.py's
RECIPE this many views (tests/face/test_pipeline.py)."""

from __future__ import annotations

# FACEVERIFY_MODEL: the encoder models app/face/registry.py can build.
ENCODER_MODEL_NAMES: tuple[str, ...] = ("dlib_resnet_v1",)

# FACEVERIFY_TEMPLATE_VIEWS at most: the length of app/face/views.py's RECIPE.
MAX_TEMPLATE_VIEWS = 18
