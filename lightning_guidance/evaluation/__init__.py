"""Evaluation pieces shared by the callbacks and SamplingModule's test stage: the judge network, rank splits that
never pad, generation for a block of sample ids, judge-based sample quality, classifier calibration over diffusion
time, guidance traces, a held-out calibration split, and the PNG figures.

Nothing here is a trained module: evaluation networks live in these objects (held by callbacks or SamplingModule),
never as attributes of a module that is trained, so they land in no checkpoint and no EMA copy.
"""
