# Default protocol (AerialSeg): masks scored at the original image resolution (predictions come at
# ori_shape), Pr@X with >=, IoU 1 for a correctly empty prediction on an empty target. The same
# resolution as RSRefSeg / RSRefSeg 2 and mmdet's RefSegMetric. The rules are in
# aerialseg/evaluation/protocols.py.
# Switch protocol without editing configs: `tools/test.py CONFIG CKPT --protocol rmsin_480`, or in a
# child config `test_evaluator = dict(protocol="rmsin_480")` (every preset sets only these two keys,
# so a preset merged over another one replaces it completely).
val_evaluator = dict(type="ReferringMetric", protocol="original_resolution")
test_evaluator = dict(type="ReferringMetric", protocol="original_resolution")
