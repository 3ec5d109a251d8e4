"""Conditional-GAN synthesis of COVID-19 chest CT slices from lesion label maps."""
