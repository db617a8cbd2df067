"""The paper's idea: capture h0, mix it into adapter branches, and the PEFT model that carries it."""
