"""FOCAL (Wu, Chen, Zhou, Li; arXiv 2308.09307, IEEE TDSC 2025): forgery localization by clustering.

A feature extractor (HRNet-W32 at H/4, or a ViT at H/16) is trained with a per-image InfoNCE so
that pristine pixels of an image sit together and forged ones apart; at test time each image's
features are clustered into a mask. Modules: :mod:`.clustering` (the public ``forged_mask``, no
torch), :mod:`.model` (the networks, shared with MPC), :mod:`.loss` (FOCAL's InfoNCE), :mod:`.task`
(the trainer's task), :mod:`.localizer` (``bench eval focal``, feature fusion). Importing this
package imports neither torch nor hdbscan. See docs/baselines/focal.md.
"""
