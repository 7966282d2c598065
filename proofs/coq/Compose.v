(** * Compose.v -- lossless verifiers compose: any hierarchy of lossless levels is lossless.

    The model cascade of Globerson, Kaplan, Mansour, Mohri, Schuster, "Fast Inference via
    Hierarchical Speculative Decoding" (arXiv 2510.19705; papers.md §4), as implemented by
    hsd_ref/schemes/hierarchy.py with [surplus="truncate"]: models M_0 < M_1 < ... < M_L; level 0
    samples autoregressively from M_0; level i + 1 runs a decoding loop whose every iteration asks
    level i for a batch of exactly [T i] tokens from the current context (a fresh request each
    time), verifies it against M_{i+1} with a verifier whose draft model is M_i, and appends the
    accepted tokens plus one recovered/bonus token; it passes up the first [T (i+1)] tokens of its
    stream.

    - [level_exact]: a level that receives exact samples of its proposer's law (the batch law
      equals M_i's law of [T i] tokens) and verifies losslessly emits exact samples of its own law
      (at every horizon, over any number of iterations);
    - [hierarchy_lossless]: hence, by induction on the levels, the stream of every level -- the
      target's included -- is exactly its model's law, for every choice of lossless per-level
      verifiers;
    - [hierarchy_tokenwise_block_lossless]: the instance where each level uses token-wise
      (SpecLossless.v) or block (Block.v) verification, as hsd_ref's [hierarchy] variants do.

    Not covered: [surplus="pass"] (a batch whose length depends on its tokens).
*)

From Coq Require Import Reals Lra Lia List.
From HSD Require Import Common SpecLossless Block.
Import ListNotations.
Local Open Scope R_scope.

(** A verifier: given what runs after the iteration ([G]) and a draft [xs], the law of the
    iteration's output (accepted tokens and the recovered/bonus token, then [G]). *)
Definition Verifier (A : Type) : Type := Kont A -> list A -> Kont A.

Section Compose.
Context {A : Type} (vocab : list A).

(** Lossless for target [p] and drafts of [k] tokens sampled from [q]. *)
Definition verifier_lossless (p q : Model A) (k : nat) (V : Verifier A) : Prop :=
  iteration_lossless vocab p (fun G c n f => draft_avg vocab q k c (fun xs => V G xs c n f)).

(** An iteration whose draft is the first [k] tokens a [proposer] (given by its law) emits from
    the current context. *)
Definition proposed_iteration (proposer : Kont A) (k : nat) (V : Verifier A) : Iteration :=
  fun G c n f => proposer c k (fun xs => V G xs c n f).

Theorem level_exact (p q : Model A) (k : nat) (V : Verifier A) (proposer : Kont A) :
  verifier_lossless p q k V ->
  (forall c F, proposer c k F = target vocab q c k F) ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (proposed_iteration proposer k V) fuel c n f = target vocab p c n f.
Proof.
  intros HV Hprop. apply decode_lossless.
  intros G m HG c n f Hn. unfold proposed_iteration.
  rewrite Hprop, <- draft_avg_is_target. apply (HV G m HG c n f Hn).
Qed.

Section Hierarchy.
Variable M : nat -> Model A.       (* M 0 = the smallest draft; level i verifies with M i *)
Variable T : nat -> nat.           (* level i passes up batches of T i tokens *)
Variable V : nat -> Verifier A.    (* V (S i): the verifier of level i + 1 (target M (S i), draft M i) *)

(** The law of the stream of level [i]: [level i c n f] is the expectation of [f] over the first
    [n] tokens level [i] emits from context [c]. *)
Fixpoint level (i : nat) : Kont A :=
  match i with
  | O => target vocab (M O)
  | S i' => fun c n f => decode (proposed_iteration (level i') (T i') (V (S i'))) n c n f
  end.

Theorem hierarchy_lossless :
  (forall i, verifier_lossless (M (S i)) (M i) (T i) (V (S i))) ->
  forall L c n f, level L c n f = target vocab (M L) c n f.
Proof.
  intros HV L. induction L as [|L IH]; intros c n f; [reflexivity|].
  simpl level. apply (level_exact (M (S L)) (M L) (T L) (V (S L)) (level L) (HV L)); [|lia].
  intros c' F. apply IH.
Qed.

End Hierarchy.

Lemma tokenwise_verifier_lossless (p q : Model A) (k : nat) :
  is_model vocab p -> is_model vocab q -> verifier_lossless p q k (tw_verify vocab p q).
Proof. intros Hp Hq. apply (tokenwise_iteration_lossless vocab p q Hp Hq k). Qed.

Lemma block_verifier_lossless (p q : Model A) (k : nat) :
  is_model vocab p -> is_model vocab q -> verifier_lossless p q k (blk_verify vocab p q).
Proof. intros Hp Hq. apply (block_iteration_lossless vocab p q Hp Hq k). Qed.

(** Every level verifies with token-wise ([use_block i = false]) or block verification. *)
Definition tw_or_block (M : nat -> Model A) (use_block : nat -> bool) (i : nat) : Verifier A :=
  match i with
  | O => tw_verify vocab (M O) (M O)     (* level 0 verifies nothing; never used *)
  | S i' => if use_block (S i') then blk_verify vocab (M (S i')) (M i') else tw_verify vocab (M (S i')) (M i')
  end.

Theorem hierarchy_tokenwise_block_lossless (M : nat -> Model A) (T : nat -> nat) (use_block : nat -> bool) :
  (forall i, is_model vocab (M i)) ->
  forall L c n f, level M T (tw_or_block M use_block) L c n f = target vocab (M L) c n f.
Proof.
  intros HM. apply hierarchy_lossless. intros i. simpl.
  destruct (use_block (S i)).
  - apply block_verifier_lossless; apply HM.
  - apply tokenwise_verifier_lossless; apply HM.
Qed.

End Compose.
