(** * SpecLossless.v -- token-wise speculative sampling is lossless.

    Leviathan, Kalman, Matias 2023 (arXiv 2211.17192, Alg. 1, App. A.1); Chen et al. 2023.
    Mirrors hsd_ref/schemes/tokenwise.py ([Tokenwise.plan], the "forward" scan of hsd_ref/scheme.py).

    One iteration from context [c]:
    - draft [x_1 .. x_k] autoregressively from the draft model [q] (eagerly, before verifying);
    - scan forward: position [i] is accepted with chance [accept] = min(1, p(x_i) / q(x_i))
      (0 when q(x_i) = 0, as hsd_ref's [ratio_chance]); the first rejection stops the scan and emits a
      token from the residual norm(max(p - q, 0)) of that position (the target row itself when the
      residual is empty, as hsd_ref's [residual_or_target]);
    - if all [k] drafts are accepted, the bonus token is drawn from the target row after them.
    The decoding loop ([decode] of Common.v) repeats iterations from the extended context.

    Main results (every finite vocabulary, every pair of language models [p], [q]):
    - [spec_step_lossless]: one position: accepted mass + rejected mass * residual = p, the q = 0 and
      empty-residual cases included;
    - [tokenwise_iteration_lossless]: any draft length [k]: one iteration followed by target
      sampling is target sampling;
    - [spec_decoding_lossless]: any draft length, any number of iterations, bonus tokens included:
      the law of the first [n] emitted tokens is the target's law of [n] tokens, for every [n];
      [spec_decoding_lossless_prob] states it for the probability of one sequence.
*)

From Coq Require Import Reals Lra Lia List.
From HSD Require Import Common.
Import ListNotations.
Local Open Scope R_scope.

Section Tokenwise.
Context {A : Type} (vocab : list A) (p q : Model A).

Local Notation vsum := (vsum vocab).
Local Notation target := (target vocab p).

(** hsd_ref [ratio_chance(p_x, q_x)]. *)
Definition accept (c : list A) (x : A) : R :=
  if Req_EM_T (q c x) 0 then 0 else Rmin 1 (p c x / q c x).

(** hsd_ref [positive_part(p, q)] and [residual_or_target]. *)
Definition excess (c : list A) (v : A) : R := Rmax (p c v - q c v) 0.

Definition residual (c : list A) (v : A) : R :=
  if Req_EM_T (vsum (excess c)) 0 then p c v else excess c v / vsum (excess c).

(** Verification of one fixed draft [xs] by the forward scan; [G] runs after the iteration. *)
Fixpoint tw_verify (G : Kont A) (xs : list A) (c : list A) (n : nat) (f : list A -> R) {struct xs} : R :=
  match xs with
  | [] => vsum (fun v => p c v * emit v G c n f)                         (* bonus token *)
  | x :: xs' =>
      accept c x * emit x (tw_verify G xs') c n f                          (* x accepted *)
      + (1 - accept c x) * vsum (fun v => residual c v * emit v G c n f)   (* recovered token *)
  end.

(** One iteration: draft [k] tokens from [q], verify them. *)
Definition tw_iteration (k : nat) : Iteration :=
  fun G c n f => draft_avg vocab q k c (fun xs => tw_verify G xs c n f).

Hypothesis Hp : is_model vocab p.
Hypothesis Hq : is_model vocab q.

Lemma accept_mass_q c x : q c x * accept c x = Rmin (q c x) (p c x).
Proof.
  unfold accept. destruct (Hp c) as [Hppos _]; destruct (Hq c) as [Hqpos _].
  specialize (Hppos x); specialize (Hqpos x).
  destruct (Req_EM_T (q c x) 0) as [H0|H0].
  - rewrite H0. unfold Rmin. destruct (Rle_dec 0 (p c x)); lra.
  - apply accept_mass; lra.
Qed.

(** Probability of rejecting a draft token = total residual mass. *)
Lemma reject_prob c :
  vsum (fun x => q c x * (1 - accept c x)) = vsum (excess c).
Proof.
  destruct (Hp c) as [_ Hp1]; destruct (Hq c) as [_ Hq1].
  transitivity (vsum (fun x => q c x - Rmin (q c x) (p c x))).
  - apply vsum_ext; intros x. rewrite <- accept_mass_q. lra.
  - rewrite vsum_minus. unfold excess.
    assert (E : vsum (fun v => Rmax (p c v - q c v) 0) = vsum (fun v => p c v - Rmin (q c v) (p c v))).
    { apply vsum_ext; intros v. rewrite Rmin_comm. pose proof (min_plus_excess (p c v) (q c v)). lra. }
    rewrite E, vsum_minus. rewrite Hp1, Hq1. reflexivity.
Qed.

(** The single-position theorem: accepted mass plus rejected mass times the residual is [p]. *)
Theorem spec_step_lossless c v :
  In v vocab ->
  q c v * accept c v + vsum (fun x => q c x * (1 - accept c x)) * residual c v = p c v.
Proof.
  intros Hin. rewrite accept_mass_q, reject_prob. unfold residual.
  pose proof (min_plus_excess (p c v) (q c v)) as Hmp. rewrite Rmin_comm in Hmp.
  destruct (Req_EM_T (vsum (excess c)) 0) as [H0|H0].
  - (* empty residual: then excess(v) = 0, i.e. p(v) <= q(v), and min(q, p) = p *)
    assert (Hv : excess c v = 0).
    { apply Rle_antisym; [|apply Rmax_nonneg].
      rewrite <- H0. apply lsum_term_le; [intros y; apply Rmax_nonneg | exact Hin]. }
    rewrite H0. unfold excess in Hv. lra.
  - unfold excess in *. field_simplify; [|exact H0]. lra.
Qed.

(** One iteration, averaged over the draft, followed by anything that agrees with the target. *)
Lemma tw_avg G m k : agree vocab p m G ->
  forall c n f, (n <= S m)%nat ->
  draft_avg vocab q k c (fun xs => tw_verify G xs c n f) = target c n f.
Proof.
  intros HG. induction k as [|k IH]; intros c n f Hn.
  - rewrite draft_avg_0. simpl. rewrite (target_step vocab p c n f (Hp c)).
    apply vsum_ext; intros v. rewrite (emit_agree vocab p m G v c n f HG Hn). reflexivity.
  - rewrite draft_avg_S. simpl tw_verify.
    set (T := fun v => emit v (Common.target vocab p) c n f).
    set (Rj := vsum (fun v => residual c v * emit v G c n f)).
    assert (HR : Rj = vsum (fun v => residual c v * T v)).
    { unfold Rj, T. apply vsum_ext; intros v. rewrite (emit_agree vocab p m G v c n f HG Hn). reflexivity. }
    transitivity (vsum (fun x => q c x * accept c x * T x + q c x * (1 - accept c x) * Rj)).
    { apply vsum_ext; intros x.
      rewrite draft_avg_plus, !draft_avg_scal, draft_avg_const by exact Hq.
      rewrite draft_avg_emit.
      rewrite (emit_ext x _ (Common.target vocab p)).
      - unfold T. lra.
      - intros n' f' Hn'. apply IH. lia. }
    rewrite vsum_plus, vsum_scal_r, HR, <- vsum_scal_l, <- vsum_plus.
    rewrite (target_step vocab p c n f (Hp c)). apply vsum_ext_in; intros v Hin.
    rewrite <- (spec_step_lossless c v Hin). unfold T. lra.
Qed.

Theorem tokenwise_iteration_lossless k : iteration_lossless vocab p (tw_iteration k).
Proof. intros G m HG c n f Hn. apply (tw_avg G m k HG c n f Hn). Qed.

End Tokenwise.

(** The decoding loop: [fuel] bounds the number of iterations; every horizon [n <= fuel] is exact,
    so [fuel = n] (or anything larger) gives the law of the first [n] tokens. *)
Theorem spec_decoding_lossless {A : Type} (vocab : list A) (p q : Model A) (k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (tw_iteration vocab p q k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply tokenwise_iteration_lossless; assumption.
Qed.

(** The same for the probability of one sequence [ys] of [n] vocabulary tokens. *)
Corollary spec_decoding_lossless_prob {A : Type} (vocab : list A) (p q : Model A) (k : nat)
  (eq_dec : forall x y : A, {x = y} + {x <> y}) :
  is_model vocab p -> is_model vocab q -> NoDup vocab ->
  forall c (ys : list A), (forall y, In y ys -> In y vocab) ->
  decode (tw_iteration vocab p q k) (length ys) c (length ys) (indicator eq_dec ys) = seq_prob p c ys.
Proof.
  intros Hp Hq Hnd c ys Hys.
  rewrite (spec_decoding_lossless vocab p q k Hp Hq (length ys)) by lia.
  apply target_prob; assumption.
Qed.
