"""One SAM toolkit shared by the SAM teacher, the ViT-Det student, the SAM head, export and eval:
the released variants and SAM's pixel statistics as data (:mod:`.variants`), the released
checkpoints by name with their SHA-256 (:mod:`.releases`), position-table resampling
(:mod:`.positions`), prompt sampling (:mod:`.prompts`) and batched mask decoding
(:mod:`.decoding`)."""
