//! The paper's U-Net (DDPM.md section 6).
