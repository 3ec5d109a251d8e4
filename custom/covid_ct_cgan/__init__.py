"""Conditional-GAN synthesis of COVID-19 chest CT slices from lesion label maps.

Importing the package changes nothing global (log filters, warning filters, environment): the entry points
install the project's log and warning filters when they start (:func:`covid_ct_cgan.errors.exit_on_input_error`,
:func:`covid_ct_cgan.logs.install_log_filters`).
"""
