//! The diffusion process (DDPM.md sections 1-5).
