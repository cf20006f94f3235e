"""One SAM toolkit shared by the SAM teacher, the ViT-Det student, the SAM head, export and eval:
prompt sampling (:mod:`.prompts`) and batched mask decoding (:mod:`.decoding`)."""
