# RSRefSeg / RSRefSeg 2 protocol (their RefSegIoUMetric): original resolution, Pr@X with strict >,
# an empty union gives NaN (gIoU = mIoU becomes NaN, Pr@X counts it as a failure, the per-category
# table skips it). Use it to compare with RSRefSeg's numbers.
val_evaluator = dict(type="ReferringMetric", protocol="rsrefseg_strict")
test_evaluator = dict(type="ReferringMetric", protocol="rsrefseg_strict")
