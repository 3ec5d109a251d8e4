"""Evaluation: image quality, segmentation experiments, ablations and reports.

- :mod:`.image_metrics`: PSNR, SSIM, RMSE of a slice pair, whole slice or lung only (MONAI metrics);
- :mod:`.fid_features`: FID feature networks (the project's, or a local Inception-v3);
- :mod:`.realism`: KID, the vesselness ratio and the classifier two-sample test;
- :mod:`.models`: a trained generator rebuilt from its training config;
- :mod:`.image_quality`: paper Table II, ``evaluate.yaml`` run id ``run``;
- :mod:`.segmentation`: paper Tables III and IV, ``segmentation.yaml`` run id ``run``;
- :mod:`.statistics`: folds, confidence intervals, patient bootstrap;
- :mod:`.ablation`: paper Table V, ``evaluate.yaml`` run id ``ablation``;
- :mod:`.report`: ``report.md``, CSVs and figures, ``evaluate.yaml`` run id ``report``;
- :mod:`.provenance`: which data, image size, epochs, seed and commit produced a number.
"""
