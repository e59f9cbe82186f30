"""A second stage after `train` that learns from the SFT model's own checked attempts.

Switched on by a recipe's `preference:` section (off when absent: every run without it keeps
its hash and meaning). The SFT model, merged, samples k replies to prompts made from training
conversations; each sample is scored by the project's checkers (`sftlab.ifeval`, echo-proof)
and by usability (`sftlab.categories`); a passing, usable sample and a failing one to the same
prompt make a pair; then either TRL's `DPOTrainer` trains a new LoRA over the merged SFT model
on the pairs (the reference, the adapter disabled, is the SFT model), or, the cheaper
rejection-sampling fine-tuning (RFT), SFT on the chosen samples alone. The idea is Tulu 3's
verifiable rewards and on-policy preference pairs (Lambert et al. 2024); the checks are the
ones the instruction examples were made with, the phrasings the training ones.

  prompts   the prompt pool: instruction prompts made as `sftlab.data.instructions` makes its
            examples (1-2 checkable instructions each), plus plain training prompts
  pairs     every sample judged; one pair per prompt by stated rules, repairs by the instruction
            rewrites, every prompt without a pair counted by reason (pairs_report.json)
  trainers  pre-tokenized pairs (`sftlab.chat`, as SFT and evaluation encode), DPO and RFT
  recipe    the `preference:` section's defaults and checks
  stage     the stage inside `sftlab run`, resumable like the others; the result's loading
"""
