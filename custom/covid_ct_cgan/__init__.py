"""Conditional-GAN synthesis of COVID-19 chest CT slices from lesion label maps."""

from .logs import install_log_filters as _install_log_filters

_install_log_filters()  # quiet, readable logs wherever the package is used (see covid_ct_cgan.logs)
