"""fgvc: what the three stages of the iNat 2019 CAM-crop solution share.

reader (data) -> images and transforms (image, transforms) -> models (models)
-> training engine (engine) -> outputs: CAM masks (cam), crops (crop),
prior correction (prior), submission (submission).
"""
