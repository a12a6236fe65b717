"""LLM tooling for Aerial-D: expression enhancement with a teacher model and Gemma 3 distillation.

One enhancement request per target (object, group or land-cover region) carries the target's
category, its rule-based expressions and two rendered images, and asks for one rewrite per original
expression plus two new, visually grounded expressions. Answers are validated, cached by request
hash and merged into the Aerial-D XML with provenance.

Submodules (imported lazily; nothing heavy is imported here):

- :mod:`llm.config` – YAML run configuration (backend, sampling, queue, rendering, validation).
- :mod:`llm.targets` – target records read from Aerial-D patch annotations.
- :mod:`llm.render` – the one rendering function for the two images of a target.
- :mod:`llm.prompt` – the versioned prompt builder (teacher, SFT data and student inference).
- :mod:`llm.schema` – the output schema and its strict validation.
- :mod:`llm.backend`, :mod:`llm.cache`, :mod:`llm.ledger`, :mod:`llm.enhance` – the async request
  queue, the content-addressed response cache, the per-target job ledger and the run itself.
- :mod:`llm.batch` – the OpenAI Batch API path.
- :mod:`llm.sft`, :mod:`llm.finetune` – SFT set builder, Gemma 3 QLoRA fine-tuning and merge.
- :mod:`llm.report` – counts, failure reasons and cost.
- :mod:`llm.cli` – the ``llm`` console script.
"""
