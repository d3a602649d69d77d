"""The data path: file formats -> conversations -> template -> token ids and labels -> batches."""
