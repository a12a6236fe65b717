# LAVT / RMSIN / LGCE / FIANet protocol: both masks resized to 480x480 with PIL's NEAREST rule
# (pixel centres; torch's `nearest` picks other rows on non-square masks), Pr@X with >=, IoU 0 for
# an empty union. Use it to compare with the RRSIS-D and RefSegRS tables of that lineage.
val_evaluator = dict(type="ReferringMetric", protocol="rmsin_480")
test_evaluator = dict(type="ReferringMetric", protocol="rmsin_480")
