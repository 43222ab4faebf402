"""The judge: a second opinion from a guard or chat model on verdicts the heads are unsure of."""
