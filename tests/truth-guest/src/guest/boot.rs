//! PVH entry: the `XEN_ELFNOTE_PHYS32_ENTRY` note and the 32-bit code that gets from
//! "protected mode, paging off, EBX = hvm_start_info" to `kmain` in long mode.
//!
//! It zeroes `.bss` (the loader need not), loads a three-entry boot GDT, identity-maps the
//! first 1 GiB with 2 MiB pages (boot tables in `.bss`), sets CR4.PAE, EFER.LME and
//! CR0.PG, and far-jumps to 64-bit code, which calls `kmain(hvm_start_info_paddr)`.
//! `kmain` then installs the real GDT/TSS/IDT and page tables.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                        # namesz: "Xen\0"
    .long 8                        # descsz: a 64-bit address, as Linux writes it
    .long 18                       # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi                # hvm_start_info: kmain's argument

    movl $__bss_start, %edi        # zero .bss
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    lgdt gk_boot_gdt_ptr
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $gk_boot_stack_top, %esp

    movl $gk_boot_pdpt, %eax       # PML4[0] -> PDPT, PDPT[0] -> PD
    orl $0x3, %eax
    movl %eax, gk_boot_pml4
    movl $gk_boot_pd, %eax
    orl $0x3, %eax
    movl %eax, gk_boot_pdpt
    xorl %ecx, %ecx                # PD[i] = i * 2 MiB | PS | RW | P
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, gk_boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b

    movl %cr4, %eax
    orl $0x20, %eax                # CR4.PAE
    movl %eax, %cr4
    movl $gk_boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx         # IA32_EFER
    rdmsr
    orl $0x100, %eax               # EFER.LME
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax          # CR0.PG | CR0.PE
    movl %eax, %cr0
    ljmp $0x08, $gk_long_start

    .code64
gk_long_start:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq gk_boot_stack_top(%rip), %rsp
    movl %esi, %edi
    xorl %ebp, %ebp
    call kmain
2:
    cli
    hlt
    jmp 2b

    .section .rodata.gk_boot_gdt, "a"
    .balign 8
gk_boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff       # 0x08: 64-bit ring-0 code
    .quad 0x00cf93000000ffff       # 0x10: flat ring-0 data
gk_boot_gdt_end:
gk_boot_gdt_ptr:
    .word gk_boot_gdt_end - gk_boot_gdt - 1
    .long gk_boot_gdt

    .section .bss.gk_boot, "aw", @nobits
    .balign 4096
gk_boot_pml4:
    .skip 4096
gk_boot_pdpt:
    .skip 4096
gk_boot_pd:
    .skip 4096
    .balign 16
    .skip 65536
gk_boot_stack_top:
"#,
    options(att_syntax)
);
