"""The command-line programs (`nvae-train`, `nvae-evaluate`, `nvae-sample`, `nvae-convert`,
`nvae-tune`, `nvae-parity`)."""
