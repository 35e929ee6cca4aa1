/* Multiboot2 header and 32-bit entry (Multiboot2 spec 3.1, 3.3; SDM 10.8.5 for the switch
 * to long mode). GRUB enters `_start` in 32-bit protected mode, paging off, EAX = magic,
 * EBX = physical address of the boot information. We build an identity map of the first
 * 4 GiB with 2 MiB pages, enable PAE + long mode + paging, load a 64-bit GDT and call
 * kmain(magic, info) on a 64 KiB stack. */

    .section .multiboot2, "a"
    .balign 8
hv_mb2_header:
    .long 0xe85250d6                        /* magic */
    .long 0                                 /* architecture: i386 protected mode */
    .long hv_mb2_header_end - hv_mb2_header /* header length */
    .long -(0xe85250d6 + 0 + (hv_mb2_header_end - hv_mb2_header))
    .balign 8
    .short 6, 0                             /* module alignment tag: page-align modules */
    .long 8
    .balign 8
    .short 0, 0                             /* end tag */
    .long 8
hv_mb2_header_end:

    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    movl %eax, %edi                 /* magic -> first argument */
    movl %ebx, %esi                 /* info  -> second argument */
    movl $hv_boot_stack_top, %esp

    /* Long mode available? CPUID.80000001h:EDX.LM[bit 29] */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb hv_no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz hv_no_long_mode

    /* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3 */
    movl $hv_boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, hv_boot_pml4
    movl $hv_boot_pd, %eax
    orl $0x3, %eax
    movl %eax, hv_boot_pdpt
    addl $0x1000, %eax
    movl %eax, hv_boot_pdpt + 8
    addl $0x1000, %eax
    movl %eax, hv_boot_pdpt + 16
    addl $0x1000, %eax
    movl %eax, hv_boot_pdpt + 24

    /* 2048 PD entries: i << 21 | present | writable | 2 MiB page */
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, hv_boot_pd(,%ecx,8)
    movl $0, hv_boot_pd + 4(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b

    movl %cr4, %eax
    orl $(1 << 5), %eax             /* CR4.PAE */
    movl %eax, %cr4
    movl $hv_boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax             /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax           /* CR0.PG | CR0.WP | CR0.PE */
    movl %eax, %cr0

    lgdt hv_boot_gdt_ptr
    ljmp $0x08, $hv_long_entry

hv_no_long_mode:
    /* Nothing can be printed reliably yet: halt. */
    hlt
    jmp hv_no_long_mode

    .code64
hv_long_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $hv_boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %edi, %edi                 /* zero-extend: upper halves are undefined after the switch */
    movl %esi, %esi
    call kmain
2:  cli
    hlt
    jmp 2b

    .section .rodata.boot, "a"
    .balign 16
hv_boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: data */
hv_boot_gdt_end:
hv_boot_gdt_ptr:
    .short hv_boot_gdt_end - hv_boot_gdt - 1
    .long hv_boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
hv_boot_pml4:
    .skip 4096
hv_boot_pdpt:
    .skip 4096
hv_boot_pd:
    .skip 4 * 4096
hv_boot_stack:
    .skip 64 * 1024
hv_boot_stack_top:
    .text
