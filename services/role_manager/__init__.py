"""The role manager (seed 002): versioned roles converging on hosts."""
