"""Stable Diffusion 3 at toy scale: the QK-norm study and the Table-1 study (formulations x seeds).

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``). The network is :class:`lib.nn.mmdit.MMDiT`; schedules,
losses, formulations (:mod:`lib.diffusion.rectified`), time samplers and samplers come from :mod:`lib.diffusion`.
Modules: :mod:`.qknorm_study` (``python -m lib.sd3.qknorm_study``), :mod:`.table1` (``python -m lib.sd3.table1``),
:mod:`.pipeline` (the MMDiT text-to-image model on the shapes latents: ``python -m lib.sd3.pipeline train|evaluate``).
"""
