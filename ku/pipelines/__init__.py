"""End-to-end recipes, one per paper: data -> features -> heads -> training -> evaluation.

* :func:`ku.pipelines.mlsp.run_mlsp` (Hosu et al. 2019) -> :class:`~ku.pipelines.mlsp.MlspResult`
* :func:`ku.pipelines.apm.run_apm` (Murray & Gordo 2017) -> :class:`~ku.pipelines.apm.ApmResult`
* :func:`ku.pipelines.theme_roi.run_theme_roi` (Jia, Li, He 2019) ->
  :class:`~ku.pipelines.theme_roi.ThemeRoiResult`

Scripts in ``scripts/`` are thin absl-flag wrappers around these functions: they define the
flags, read the data (demo set, AVA, Photo.net) and print.
"""
