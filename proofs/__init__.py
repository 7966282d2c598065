"""Machine-checked proofs that the schemes of hsd_ref are lossless.

* ``proofs/coq`` -- Coq 8.16, standard library only: token-wise speculative sampling
  (``SpecLossless.v: spec_decoding_lossless``) and block verification (``Block.v: block_lossless``)
  are lossless for every finite vocabulary, every draft length, every number of iterations and
  every horizon; so is HSD with capped branch resampling in its own joint-mass formulation
  (``HsdCapped.v: hsd_capped_lossless``, via its draft-averaged equality with block verification);
  lossless levels compose into lossless hierarchies (``Compose.v``); adaptive (stopping-time) draft
  lengths keep token-wise, block and HSD-capped verification lossless (``Adaptive.v``); recursive
  rejection sampling over N drafts, with and without replacement, is lossless for every draft
  length and every N (``RRS.v: rrs_lossless``, ``rrs_without_replacement_lossless``); the latency
  identities of Leviathan et al. §3 (``Latency.v``).
* ``proofs/smt`` -- z3: every lossless scheme of hsd_ref at fixed vocabulary sizes (draft length 1
  and 2), on laws built by encodings that are checked exactly against hsd_ref's code, and
  counterexamples for the lossy controls, confirmed by ``hsd_ref.check_lossless``.

Run everything with ``python -m proofs`` (see :mod:`proofs.runner`); docs/proofs.md explains each
theorem, what it covers and what it does not.
"""
