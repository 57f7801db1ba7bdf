"""ku models: MLSP (Hosu 2019), heads, APM (Murray & Gordo 2017), theme-ROI (Jia 2019)."""
