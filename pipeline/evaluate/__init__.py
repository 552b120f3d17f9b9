"""``ppmseg evaluate``: mIoU, per-class IoU and pixel accuracy on ADE20K's validation
split, computed as PaddleSeg 2.8 computes them.

- Dataset (``paddleseg/datasets/ade.py``, ``mode='val'``): every ``*.jpg`` of
  ``ADEChallengeData2016/images/validation`` with the ``.png`` of the same name in
  ``annotations/validation``. Annotation 0 ("other") is ignored and 1..150 are the
  classes 0..149: PaddleSeg subtracts 1 from the uint8 map, so 0 wraps to its
  ``ignore_index`` 255. The label map is not resized: scoring is at the image's size.
- Metric (``paddleseg/utils/metrics.py``: ``calculate_area``, ``mean_iou``,
  ``class_measurement``): per class, intersection, predicted and labelled pixel counts
  over non-ignored pixels, summed over the whole set; IoU = I / (P + L - I), a class
  with an empty union scores 0 and still counts in the mean (mIoU is the mean over all
  150 classes); pixel accuracy = sum(I) / sum(P).
- Prediction: a ``predict(image) -> labels`` callable (uint8 RGB ``[H, W, 3]`` to an
  ``[H, W]`` label map); ``pytorch_predictor`` and ``artifact_predictor`` build one.

Modules: ``dataset`` (the split and its annotations), ``metric`` (the accumulated areas and
scores), ``predictors`` (a model or an artifact as ``predict``), ``record`` (the result JSON).
"""
