;; Hostile guest (core module; build.sh wraps it into a tandem:rules@0.2.0
;; component): every string it returns is the same 8 MiB of its memory.
;; `check` keeps with 15 tags that all alias it (120 MiB to copy out),
;; `check-batch` vetoes every item with it as the reason (8 MiB per item).
;; A Rust guest cannot alias strings in its results; the canonical ABI does
;; not forbid it, so the host's copy limit must.
(module
  (memory (export "memory") 129)
  ;; [0, 8 MiB): zeros, the aliased string (NUL is valid UTF-8).
  ;; From 8 MiB: a bump allocator, reset after each call (post-return).
  (global $bump (mut i32) (i32.const 0x800000))

  (func $alloc (param $size i32) (param $align i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end)
                (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (global.set $bump (local.get $end))
    (local.get $ptr))

  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (call $alloc (local.get $size) (local.get $align)))

  ;; outcome (24 bytes): verdict discriminant u8 @0, payload @4 (demotion:
  ;; f32 @4, reason @8/@12; veto: reason @4/@8), tags list @16 (ptr), @20 (len).

  (func (export "tandem:rules/rule@0.2.0#check") (param $input i32) (result i32)
    (local $out i32) (local $tags i32) (local $i i32)
    (local.set $out (call $alloc (i32.const 24) (i32.const 4)))
    (local.set $tags (call $alloc (i32.const 120) (i32.const 4)))
    (loop $fill
      (i32.store (i32.add (local.get $tags) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
      (i32.store offset=4 (i32.add (local.get $tags) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0x800000))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 15))))
    (i32.store8 (local.get $out) (i32.const 0))
    (i32.store offset=16 (local.get $out) (local.get $tags))
    (i32.store offset=20 (local.get $out) (i32.const 15))
    (local.get $out))

  ;; batch, flattened: text ptr/len, ends ptr/len, query-entities,
  ;; items ptr/len, entity-scores ptr/len.
  (func (export "tandem:rules/rule@0.2.0#check-batch")
    (param i32 i32 i32 i32 i32 i32) (param $n i32) (param i32 i32) (result i32)
    (local $ret i32) (local $list i32) (local $o i32) (local $i i32)
    (local.set $ret (call $alloc (i32.const 8) (i32.const 4)))
    (local.set $list (call $alloc (i32.mul (local.get $n) (i32.const 24)) (i32.const 4)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $o (i32.add (local.get $list) (i32.mul (local.get $i) (i32.const 24))))
        (i32.store8 (local.get $o) (i32.const 2))
        (i32.store offset=4 (local.get $o) (i32.const 0))
        (i32.store offset=8 (local.get $o) (i32.const 0x800000))
        (i32.store offset=16 (local.get $o) (i32.const 0))
        (i32.store offset=20 (local.get $o) (i32.const 0))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.store (local.get $ret) (local.get $list))
    (i32.store offset=4 (local.get $ret) (local.get $n))
    (local.get $ret))

  (func $reset (param i32) (global.set $bump (i32.const 0x800000)))
  (export "cabi_post_tandem:rules/rule@0.2.0#check" (func $reset))
  (export "cabi_post_tandem:rules/rule@0.2.0#check-batch" (func $reset)))
