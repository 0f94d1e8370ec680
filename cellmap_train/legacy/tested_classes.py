"""The challenge's tested classes (`get_tested_classes()`), in the order its CSV lists them."""

TESTED_CLASSES = (
    "ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "golgi_mem", "golgi_lum", "ves_mem", "ves_lum",
    "endo_mem", "endo_lum", "lyso_mem", "lyso_lum", "ld_mem", "ld_lum", "er_mem", "er_lum", "eres_mem",
    "eres_lum", "ne_mem", "ne_lum", "np_out", "np_in", "hchrom", "echrom", "nucpl", "mt_out", "cyto",
    "mt_in", "nuc", "golgi", "ves", "endo", "lyso", "ld", "eres", "perox_mem", "perox_lum", "perox",
    "mito", "er", "ne", "np", "chrom", "mt", "cell", "er_mem_all", "ne_mem_all",
)
assert len(TESTED_CLASSES) == 48
