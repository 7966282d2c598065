(** * RRS.v -- recursive rejection sampling over N drafts is lossless, with and without replacement.

    SpecInfer's multi-step speculative sampling (Miao et al., ASPLOS 2024, Thm 4.2); RRS with
    replacement (Yang et al. 2024, "Multi-candidate speculative decoding"); without replacement
    (Jeon et al. 2024, RSD; Sequoia); papers.md §7.  Mirrors hsd_ref/multidraft.py (the tree walk of
    [MultiDraftScheme.joint_law] and [node_law]), hsd_ref/schemes/rrs.py ([RRS.decide]) and
    hsd_ref/schemes/rrs_without_replacement.py.

    The node rule ([verify], hsd_ref [RRS.decide]).  At a node with target row [P] and draft row
    [q] the candidate tokens are tried in slot order; a candidate is [Some x], or [None] for an
    absent draft (hsd_ref's placeholder -1):
    - candidate [Some x] is accepted with chance [ratio_chance P q x] = min(1, P(x) / q(x)), 0 when
      q(x) = 0; [None] has chance 0;
    - on a rejection (of any candidate, [None] included) [P <- rrs_residual P q] =
      norm(max(P - q, 0)) ([P] kept when that is all zero), and [q <- upd q cand]: [q] unchanged
      with replacement ([q_keep]), [q <- drop_token q x] = norm(q with q(x) = 0) without
      replacement ([q_drop]; the zero vector once q's support is exhausted; [None] drops nothing);
    - if every candidate is rejected, the emitted token is drawn from the final [P].

    The drafting law of the [m] candidates at a node (hsd_ref [MultiDraftScheme.candidate_law]):
    - with replacement ([iid_draft]): [m] i.i.d. draws from [q];
    - without replacement ([wor_draft]): sequential draws, each from [q] restricted to the tokens
      not drawn yet and renormalised (= [drop_token] applied once per earlier draw); once q's
      support is exhausted the rest of the group is absent ([None]).

    One iteration with [N] drafts and draft length [k] ([rrs_node], hsd_ref [joint_law]): the tree
    walk.  The root node has the [N] drafts; at a node with context [c] and [m] consistent drafts,
    their [m] next tokens are drawn by the drafting law from [q c] and verified with target row
    [p c]; the first accepted candidate [x] is emitted and the walk goes on from [c ++ [x]] with the
    [count_tok x toks] drafts that drafted [x] (their later tokens are fresh draws; for i.i.d.
    drafts [rrs_upfront_eq_tree] proves this is the law of N drafts sampled up front); if every
    candidate is rejected the residual token is emitted and the iteration ends.  After [k]
    acceptances the bonus token comes from [p] after the accepted path.

    Main results (every finite vocabulary, every pair of language models [p], [q], every number of
    drafts [N] and every draft length [k]):
    - [rrs_step_lossless] / [rrs_without_replacement_step_lossless]: one node with any number [m]
      of candidates, drafted by its law and verified by the node rule, emits a token whose law is
      [P], for every distribution [P] and every draft distribution [q] (for every test [H], the
      expectation of [H] of the node's outcome token -- accepted or emitted -- is [sum_v P(v) H(v)]);
      the main induction over [m];
    - [rrs_iteration_lossless] / [rrs_without_replacement_iteration_lossless]: one iteration
      followed by target sampling is target sampling;
    - [rrs_lossless] / [rrs_without_replacement_lossless]: the decoding loop, every horizon; and
      [rrs_lossless_prob] / [rrs_without_replacement_lossless_prob] for one sequence;
    - [rrs_upfront_eq_tree]: with replacement, [N] whole drafts of length [k] sampled i.i.d. up
      front and verified by hsd_ref's [verify] walk (candidates = the drafts consistent with the
      accepted prefix, slot order) have the tree walk's law; hence [rrs_upfront_lossless].
*)

From Coq Require Import Reals Lra Lia List.
From HSD Require Import Common SpecLossless.
Import ListNotations.
Local Open Scope R_scope.

(** ** The node rule and the drafting laws at one node *)

Section Node.
Context {A : Type} (vocab : list A) (eq_dec : forall x y : A, {x = y} + {x <> y}).

Local Notation vsum := (vsum vocab).
Local Notation is_dist := (is_dist vocab).


(** hsd_ref [ratio_chance(P, q, x)]. *)
Definition ratio_chance (P q : A -> R) (x : A) : R :=
  if Req_EM_T (q x) 0 then 0 else Rmin 1 (P x / q x).

Definition cand_chance (P q : A -> R) (o : option A) : R :=
  match o with None => 0 | Some x => ratio_chance P q x end.

(** hsd_ref [rrs_residual(P, q)] = norm(positive_part(P, q)), [P] when that is all zero. *)
Definition rrs_excess (P q : A -> R) (v : A) : R := Rmax (P v - q v) 0.

Definition rrs_residual (P q : A -> R) (v : A) : R :=
  if Req_EM_T (vsum (rrs_excess P q)) 0 then P v else rrs_excess P q v / vsum (rrs_excess P q).

(** hsd_ref [drop_token(q, x)] = norm(q with q(x) = 0); the (zero) weights when they sum to 0. *)
Definition drop_weights (q : A -> R) (x : A) (v : A) : R := if eq_dec v x then 0 else q v.

Definition drop_token (q : A -> R) (x : A) (v : A) : R :=
  if Req_EM_T (vsum (drop_weights q x)) 0 then drop_weights q x v
  else drop_weights q x v / vsum (drop_weights q x).

(** hsd_ref [after_rejection]: how [q] changes when a candidate is rejected. *)
Definition q_keep (q : A -> R) (o : option A) : A -> R := q.
Definition q_drop (q : A -> R) (o : option A) : A -> R :=
  match o with None => q | Some x => drop_token q x end.

(** The value of the accepted-candidate continuation [K] at a candidate (0 for an absent one,
    whose chance is 0 anyway). *)
Definition on_accept (K : A -> R) (o : option A) : R :=
  match o with None => 0 | Some x => K x end.

(** The node rule (hsd_ref [RRS.decide] followed by the candidate tests of [node_law]), in
    continuation-passing style: [K x] is what happens when candidate [x] is accepted, [E v] when
    every candidate is rejected and [v] is drawn from the final [P]. *)
Fixpoint verify (upd : (A -> R) -> option A -> A -> R) (P q : A -> R) (toks : list (option A))
  (K E : A -> R) : R :=
  match toks with
  | [] => vsum (fun v => P v * E v)
  | o :: toks' =>
      cand_chance P q o * on_accept K o
      + (1 - cand_chance P q o) * verify upd (rrs_residual P q) (upd q o) toks' K E
  end.

(** The drafting law with replacement: [m] i.i.d. draws from [q]. *)
Fixpoint iid_draft (q : A -> R) (m : nat) (F : list (option A) -> R) : R :=
  match m with
  | O => F []
  | S m' => vsum (fun x => q x * iid_draft q m' (fun xs => F (Some x :: xs)))
  end.

(** The drafting law without replacement: each draw from [q] restricted to the tokens not drawn
    yet, renormalised; once the support is exhausted ([q] sums to 0) the rest is absent. *)
Fixpoint wor_draft (q : A -> R) (m : nat) (F : list (option A) -> R) : R :=
  match m with
  | O => F []
  | S m' =>
      if Req_EM_T (vsum q) 0 then F (repeat None m)
      else vsum (fun x => q x * wor_draft (drop_token q x) m' (fun xs => F (Some x :: xs)))
  end.

(** The number of drafts that drafted [x] (hsd_ref [tokens.count(x)]). *)
Fixpoint count_tok (x : A) (toks : list (option A)) : nat :=
  match toks with
  | [] => O
  | Some y :: toks' => if eq_dec y x then S (count_tok x toks') else count_tok x toks'
  | None :: toks' => count_tok x toks'
  end.

(** *** Facts about the rows *)

Lemma vsum_zero_nonneg (F : A -> R) v :
  (forall x, 0 <= F x) -> vsum F = 0 -> In v vocab -> F v = 0.
Proof.
  intros Hpos H0 Hin. apply Rle_antisym; [|apply Hpos].
  rewrite <- H0. apply lsum_term_le; assumption.
Qed.

Lemma vsum_pos (F : A -> R) : (forall x, 0 <= F x) -> vsum F <> 0 -> 0 < vsum F.
Proof. intros Hpos H0. pose proof (vsum_nonneg vocab F Hpos). lra. Qed.

(** Normalising non-negative weights that do not sum to 0 gives a distribution. *)
Lemma normalize_dist (w : A -> R) :
  (forall x, 0 <= w x) -> vsum w <> 0 -> is_dist (fun v => w v / vsum w).
Proof.
  intros Hpos H0. pose proof (vsum_pos w Hpos H0) as Hz. split.
  - intros x. unfold Rdiv. apply Rmult_le_pos; [apply Hpos|]. left; apply Rinv_0_lt_compat; exact Hz.
  - unfold Rdiv. unfold Common.vsum. rewrite lsum_scal_r. fold (vsum w). field. exact H0.
Qed.

(** The residual of a distribution is a distribution (whatever [q] is). *)
Lemma rrs_residual_dist (P q : A -> R) : is_dist P -> is_dist (rrs_residual P q).
Proof.
  intros [HPpos HP1]. unfold rrs_residual.
  destruct (Req_EM_T (vsum (rrs_excess P q)) 0) as [H0|H0].
  - split; assumption.
  - exact (normalize_dist (rrs_excess P q) (fun x => Rmax_nonneg _) H0).
Qed.

(** Against an exhausted draft row the residual is [P] itself (on the vocabulary). *)
Lemma rrs_residual_zero (P q : A -> R) v :
  is_dist P -> (forall x, 0 <= q x) -> vsum q = 0 -> In v vocab -> rrs_residual P q v = P v.
Proof.
  intros [HPpos HP1] Hqpos Hq0 Hin.
  assert (Hq : forall x, In x vocab -> q x = 0) by (intros x Hx; exact (vsum_zero_nonneg q x Hqpos Hq0 Hx)).
  assert (He : forall x, In x vocab -> rrs_excess P q x = P x).
  { intros x Hx. unfold rrs_excess. rewrite (Hq x Hx). specialize (HPpos x).
    unfold Rmax; destruct (Rle_dec (P x - 0) 0); lra. }
  assert (HZ : vsum (rrs_excess P q) = 1) by (rewrite (vsum_ext_in vocab _ P He); exact HP1).
  unfold rrs_residual. rewrite HZ. destruct (Req_EM_T 1 0) as [E|_]; [lra|].
  rewrite (He v Hin). field.
Qed.

(** A draft row during drafting without replacement: non-negative, summing to 1, or to 0 once
    the support is exhausted. *)
Definition sub_dist (q : A -> R) : Prop := (forall x, 0 <= q x) /\ (vsum q = 1 \/ vsum q = 0).

Lemma dist_sub_dist q : is_dist q -> sub_dist q.
Proof. intros [H1 H2]. split; [exact H1|left; exact H2]. Qed.

Lemma drop_token_sub_dist q x : (forall y, 0 <= q y) -> sub_dist (drop_token q x).
Proof.
  intros Hpos.
  assert (Hw : forall y, 0 <= drop_weights q x y).
  { intros y. unfold drop_weights. destruct (eq_dec y x); [lra|apply Hpos]. }
  unfold drop_token. destruct (Req_EM_T (vsum (drop_weights q x)) 0) as [H0|H0].
  - split; [exact Hw|right; exact H0].
  - destruct (normalize_dist _ Hw H0) as [H1 H2]. split; [exact H1|left; exact H2].
Qed.

(** *** The node identity: accepted mass plus rejected mass times the residual is [P] *)

Lemma node_identity (P q : A -> R) (H : A -> R) :
  is_dist P -> is_dist q ->
  vsum (fun x => q x * (ratio_chance P q x * H x))
  + vsum (fun x => q x * (1 - ratio_chance P q x)) * vsum (fun v => rrs_residual P q v * H v)
  = vsum (fun v => P v * H v).
Proof.
  intros HP HQ.
  (* the single-draft identity of SpecLossless.v, for the constant models [P] and [q] *)
  assert (Hid : forall v, In v vocab ->
            q v * ratio_chance P q v + vsum (fun x => q x * (1 - ratio_chance P q x)) * rrs_residual P q v = P v).
  { intros v Hin. exact (spec_step_lossless vocab (fun _ => P) (fun _ => q) (fun _ => HP) (fun _ => HQ) [] v Hin). }
  rewrite <- vsum_scal_l, <- vsum_plus. apply vsum_ext_in; intros v Hin.
  rewrite <- (Hid v Hin). ring.
Qed.

(** *** With replacement: the main induction over the number of candidates *)

Lemma iid_draft_ext q m F G :
  (forall xs, F xs = G xs) -> iid_draft q m F = iid_draft q m G.
Proof.
  revert F G; induction m as [|m IH]; intros F G HFG; simpl; [apply HFG|].
  apply vsum_ext; intros x. f_equal. apply IH. intros xs; apply HFG.
Qed.

Lemma iid_draft_affine q m a b F :
  is_dist q -> iid_draft q m (fun xs => a + b * F xs) = a + b * iid_draft q m F.
Proof.
  intros [_ Hq1]. revert F; induction m as [|m IH]; intros F; simpl; [reflexivity|].
  rewrite (vsum_ext vocab _ (fun x => a * q x + b * (q x * iid_draft q m (fun xs => F (Some x :: xs))))).
  - rewrite vsum_plus, vsum_scal_l, vsum_scal_l, Hq1. ring.
  - intros x. rewrite (IH (fun xs => F (Some x :: xs))). ring.
Qed.

Theorem rrs_step_lossless (P q : A -> R) (m : nat) (H : A -> R) :
  is_dist P -> is_dist q ->
  iid_draft q m (fun toks => verify q_keep P q toks H H) = vsum (fun v => P v * H v).
Proof.
  intros HP HQ. revert P HP; induction m as [|m IH]; intros P HP; [reflexivity|].
  simpl iid_draft. cbn [verify cand_chance on_accept]. change (q_keep q) with (fun _ : option A => q).
  rewrite (vsum_ext vocab _ (fun x => q x * (ratio_chance P q x * H x)
                                + q x * (1 - ratio_chance P q x) * vsum (fun v => rrs_residual P q v * H v))).
  - rewrite vsum_plus, vsum_scal_r. apply node_identity; assumption.
  - intros x. rewrite iid_draft_affine by exact HQ.
    rewrite (IH (rrs_residual P q) (rrs_residual_dist P q HP)). ring.
Qed.

(** *** Without replacement: the same induction, the draft row shrinking along the way *)

Lemma wor_draft_ext q m F G :
  (forall xs, F xs = G xs) -> wor_draft q m F = wor_draft q m G.
Proof.
  revert q F G; induction m as [|m IH]; intros q F G HFG; simpl; [apply HFG|].
  destruct (Req_EM_T (vsum q) 0); [apply HFG|].
  apply vsum_ext; intros x. f_equal. apply IH. intros xs; apply HFG.
Qed.

Lemma wor_draft_affine q m a b F :
  sub_dist q -> wor_draft q m (fun xs => a + b * F xs) = a + b * wor_draft q m F.
Proof.
  revert q F; induction m as [|m IH]; intros q F [Hpos Hq1]; simpl; [reflexivity|].
  destruct (Req_EM_T (vsum q) 0) as [H0|H0]; [reflexivity|].
  destruct Hq1 as [Hq1|Hq1]; [|contradiction].
  rewrite (vsum_ext vocab _ (fun x => a * q x + b * (q x * wor_draft (drop_token q x) m (fun xs => F (Some x :: xs))))).
  - rewrite vsum_plus, vsum_scal_l, vsum_scal_l, Hq1. ring.
  - intros x. rewrite (IH (drop_token q x) (fun xs => F (Some x :: xs)) (drop_token_sub_dist q x Hpos)). ring.
Qed.

(** Absent candidates (an exhausted draft row) leave [P] as it is. *)
Lemma verify_absent (P q : A -> R) (j : nat) (H : A -> R) :
  is_dist P -> (forall x, 0 <= q x) -> vsum q = 0 ->
  verify q_drop P q (repeat None j) H H = vsum (fun v => P v * H v).
Proof.
  intros HP Hpos Hq0. revert P HP; induction j as [|j IH]; intros P HP; [reflexivity|].
  cbn [repeat verify cand_chance on_accept q_drop].
  rewrite (IH (rrs_residual P q) (rrs_residual_dist P q HP)).
  transitivity (vsum (fun v => rrs_residual P q v * H v)); [ring|].
  apply vsum_ext_in; intros v Hin. rewrite (rrs_residual_zero P q v HP Hpos Hq0 Hin). reflexivity.
Qed.

Lemma wor_step (P q : A -> R) (m : nat) (H : A -> R) :
  is_dist P -> sub_dist q ->
  wor_draft q m (fun toks => verify q_drop P q toks H H) = vsum (fun v => P v * H v).
Proof.
  revert P q; induction m as [|m IH]; intros P q HP [Hpos Hq1]; [reflexivity|].
  simpl wor_draft. destruct (Req_EM_T (vsum q) 0) as [H0|H0].
  - exact (verify_absent P q (S m) H HP Hpos H0).
  - destruct Hq1 as [Hq1|Hq1]; [|contradiction].
    cbn [verify cand_chance on_accept q_drop].
    rewrite (vsum_ext vocab _ (fun x => q x * (ratio_chance P q x * H x)
                                  + q x * (1 - ratio_chance P q x) * vsum (fun v => rrs_residual P q v * H v))).
    + rewrite vsum_plus, vsum_scal_r. apply node_identity; [exact HP|split; assumption].
    + intros x. rewrite wor_draft_affine by exact (drop_token_sub_dist q x Hpos).
      rewrite (IH (rrs_residual P q) (drop_token q x) (rrs_residual_dist P q HP) (drop_token_sub_dist q x Hpos)).
      ring.
Qed.

Theorem rrs_without_replacement_step_lossless (P q : A -> R) (m : nat) (H : A -> R) :
  is_dist P -> is_dist q ->
  wor_draft q m (fun toks => verify q_drop P q toks H H) = vsum (fun v => P v * H v).
Proof. intros HP HQ. apply wor_step; [exact HP|apply dist_sub_dist; exact HQ]. Qed.

Lemma verify_ext upd P q toks K1 K2 E1 E2 :
  (forall x, K1 x = K2 x) -> (forall v, E1 v = E2 v) ->
  verify upd P q toks K1 E1 = verify upd P q toks K2 E2.
Proof.
  intros HK HE. revert P q; induction toks as [|o toks IH]; intros P q; simpl.
  - apply vsum_ext; intros v; rewrite HE; reflexivity.
  - rewrite IH. destruct o as [x|]; simpl; [rewrite HK|]; reflexivity.
Qed.

End Node.

(** ** The iteration: the tree walk over depths, for every draft length [k] *)

Section Tree.
Context {A : Type} (vocab : list A) (eq_dec : forall x y : A, {x = y} + {x <> y}) (p q : Model A).

(** The drafting law at a node and the draft-row update of the node rule. *)
Context (draft : (A -> R) -> nat -> (list (option A) -> R) -> R).
Context (upd : (A -> R) -> option A -> A -> R).

Local Notation vsum := (vsum vocab).
Local Notation target := (target vocab p).

(** The node at context [c] with [m] consistent drafts and [j] positions left to verify; [G] runs
    after the iteration. *)
Fixpoint rrs_node (G : Kont A) (j : nat) (c : list A) (m : nat) (n : nat) (f : list A -> R) {struct j} : R :=
  match j with
  | O => vsum (fun v => p c v * emit v G c n f)                              (* bonus token *)
  | S j' =>
      draft (q c) m (fun toks =>
        verify vocab upd (p c) (q c) toks
          (fun x => emit x (fun c' n' f' => rrs_node G j' c' (count_tok eq_dec x toks) n' f') c n f)
          (fun v => emit v G c n f))                                         (* residual token *)
  end.

(** One iteration with [N] drafts of length [k]. *)
Definition rrs_iteration (N k : nat) : @Iteration A := fun G c n f => rrs_node G k c N n f.

Hypothesis Hp : is_model vocab p.
Hypothesis Hq : is_model vocab q.

(** What the tree walk needs of a drafting law and its node rule: its expectations respect
    pointwise equality, and one node emits a token whose law is the target row. *)
Hypothesis Hdraft_ext : forall r m F G, (forall xs, F xs = G xs) -> draft r m F = draft r m G.
Hypothesis Hstep : forall (P r : A -> R) m (H : A -> R),
  is_dist vocab P -> is_dist vocab r ->
  draft r m (fun toks => verify vocab upd P r toks H H) = vsum (fun v => P v * H v).

Lemma rrs_node_agree G M : agree vocab p M G ->
  forall j c m n f, (n <= S M)%nat -> rrs_node G j c m n f = target c n f.
Proof.
  intros HG j. induction j as [|j IH]; intros c m n f Hn.
  - simpl. rewrite (target_step vocab p c n f (Hp c)).
    apply vsum_ext; intros v. rewrite (emit_agree vocab p M G v c n f HG Hn). reflexivity.
  - simpl. set (T := fun v => emit v (Common.target vocab p) c n f).
    rewrite (Hdraft_ext (q c) m _ (fun toks => verify vocab upd (p c) (q c) toks T T)).
    + rewrite (Hstep (p c) (q c) m T (Hp c) (Hq c)). unfold T.
      symmetry. apply (target_step vocab p c n f (Hp c)).
    + intros toks. apply verify_ext.
      * intros x. unfold T. apply emit_ext. intros n' f' Hn'. apply IH. lia.
      * intros v. unfold T. apply (emit_agree vocab p M G v c n f HG Hn).
Qed.

Lemma rrs_tree_iteration_lossless N k : iteration_lossless vocab p (rrs_iteration N k).
Proof. intros G M HG c n f Hn. apply (rrs_node_agree G M HG k c N n f Hn). Qed.

End Tree.

(** ** The two schemes *)

(** hsd_ref [rrs]: [N] i.i.d. drafts, [q] kept after a rejection. *)
Definition rrs_iter {A : Type} (vocab : list A) (eq_dec : forall x y : A, {x = y} + {x <> y})
  (p q : Model A) (N k : nat) : @Iteration A :=
  rrs_iteration vocab eq_dec p q (iid_draft vocab) q_keep N k.

(** hsd_ref [rrs_without_replacement]: drafting without replacement at every node, [q] losing
    each rejected token. *)
Definition rrs_wor_iter {A : Type} (vocab : list A) (eq_dec : forall x y : A, {x = y} + {x <> y})
  (p q : Model A) (N k : nat) : @Iteration A :=
  rrs_iteration vocab eq_dec p q (wor_draft vocab eq_dec) (q_drop vocab eq_dec) N k.

Theorem rrs_iteration_lossless {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q -> iteration_lossless vocab p (rrs_iter vocab eq_dec p q N k).
Proof.
  intros Hp Hq. apply rrs_tree_iteration_lossless; [exact Hp|exact Hq| |].
  - intros r m F G H. apply iid_draft_ext; exact H.
  - intros P r m H HP Hr. apply rrs_step_lossless; assumption.
Qed.

Theorem rrs_without_replacement_iteration_lossless {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q -> iteration_lossless vocab p (rrs_wor_iter vocab eq_dec p q N k).
Proof.
  intros Hp Hq. apply rrs_tree_iteration_lossless; [exact Hp|exact Hq| |].
  - intros r m F G H. apply wor_draft_ext; exact H.
  - intros P r m H HP Hr. apply rrs_without_replacement_step_lossless; assumption.
Qed.

(** The decoding loop: every number of drafts [N], every draft length [k], every horizon. *)
Theorem rrs_lossless {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (rrs_iter vocab eq_dec p q N k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply rrs_iteration_lossless; assumption.
Qed.

Theorem rrs_without_replacement_lossless {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (rrs_wor_iter vocab eq_dec p q N k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply rrs_without_replacement_iteration_lossless; assumption.
Qed.

(** The same for the probability of one sequence [ys] of [n] vocabulary tokens. *)
Corollary rrs_lossless_prob {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q -> NoDup vocab ->
  forall c (ys : list A), (forall y, In y ys -> In y vocab) ->
  decode (rrs_iter vocab eq_dec p q N k) (length ys) c (length ys) (indicator eq_dec ys) = seq_prob p c ys.
Proof.
  intros Hp Hq Hnd c ys Hys.
  rewrite (rrs_lossless vocab eq_dec p q N k Hp Hq (length ys)) by lia.
  apply target_prob; assumption.
Qed.

Corollary rrs_without_replacement_lossless_prob {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q -> NoDup vocab ->
  forall c (ys : list A), (forall y, In y ys -> In y vocab) ->
  decode (rrs_wor_iter vocab eq_dec p q N k) (length ys) c (length ys) (indicator eq_dec ys) = seq_prob p c ys.
Proof.
  intros Hp Hq Hnd c ys Hys.
  rewrite (rrs_without_replacement_lossless vocab eq_dec p q N k Hp Hq (length ys)) by lia.
  apply target_prob; assumption.
Qed.

(** ** RRS with replacement: [N] drafts sampled up front, verified by hsd_ref's [verify]

    hsd_ref's [MultiDraftScheme.verify] takes [N] whole drafts of length [k], sampled i.i.d. from
    [q] before verification ([multi_avg]), and walks them: at each position the candidates are the
    drafts that agree with the accepted prefix, in slot order, and after accepting [x] the walk
    keeps the drafts whose token there is [x] ([walk], [tails_with]).  [rrs_upfront_eq_tree]: this
    law is the tree walk's ([rrs_node] with [iid_draft]), so [rrs_upfront_lossless] follows. *)

Section Upfront.
Context {A : Type} (vocab : list A) (eq_dec : forall x y : A, {x = y} + {x <> y}) (p q : Model A).

Local Notation vsum := (vsum vocab).
Local Notation draft_avg := (draft_avg vocab q).

(** The average of [F] over [N] drafts of length [k] sampled independently from [q] after [c]. *)
Fixpoint multi_avg (k : nat) (c : list A) (N : nat) (F : list (list A) -> R) : R :=
  match N with
  | O => F []
  | S N' => draft_avg k c (fun d => multi_avg k c N' (fun ds => F (d :: ds)))
  end.

Definition head_opt (d : list A) : option A := match d with [] => None | x :: _ => Some x end.

(** The rest of every draft whose next token is [x], in slot order. *)
Fixpoint tails_with (x : A) (ds : list (list A)) : list (list A) :=
  match ds with
  | [] => []
  | [] :: ds' => tails_with x ds'
  | (y :: t) :: ds' => if eq_dec y x then t :: tails_with x ds' else tails_with x ds'
  end.

(** hsd_ref [verify] on the drafts [ds] (each of length [j]), [G] running after the iteration. *)
Fixpoint walk (G : Kont A) (j : nat) (c : list A) (ds : list (list A)) (n : nat) (f : list A -> R) {struct j} : R :=
  match j with
  | O => vsum (fun v => p c v * emit v G c n f)
  | S j' =>
      verify vocab q_keep (p c) (q c) (map head_opt ds)
        (fun x => emit x (fun c' n' f' => walk G j' c' (tails_with x ds) n' f') c n f)
        (fun v => emit v G c n f)
  end.

Definition upfront_iteration (N k : nat) : @Iteration A :=
  fun G c n f => multi_avg k c N (fun ds => walk G k c ds n f).

Hypothesis Hq : is_model vocab q.

(** *** Averages: finite sums, so they commute *)

Lemma lsum_swap {X Y : Type} (l1 : list X) (l2 : list Y) (F : X -> Y -> R) :
  lsum l1 (fun a => lsum l2 (fun b => F a b)) = lsum l2 (fun b => lsum l1 (fun a => F a b)).
Proof.
  induction l1 as [|a l1 IH]; simpl.
  - symmetry. apply lsum_zero.
  - rewrite IH, <- lsum_plus. reflexivity.
Qed.

Lemma draft_avg_vsum k c (w : A -> R) (H : list A -> A -> R) :
  draft_avg k c (fun t => vsum (fun x => w x * H t x)) = vsum (fun x => w x * draft_avg k c (fun t => H t x)).
Proof.
  unfold Common.draft_avg, Common.vsum.
  rewrite (lsum_ext _ _ (fun t => lsum vocab (fun x => w x * (seq_prob q c t * H t x)))).
  - rewrite lsum_swap. apply lsum_ext; intros x _. rewrite <- lsum_scal_l. reflexivity.
  - intros t _. rewrite <- lsum_scal_l. apply lsum_ext; intros x _. ring.
Qed.

(** The first tokens of [m] drafts: [m] i.i.d. draws from [q c]. *)
Fixpoint heads_avg (c : list A) (m : nat) (F : list A -> R) : R :=
  match m with
  | O => F []
  | S m' => vsum (fun x => q c x * heads_avg c m' (fun xs => F (x :: xs)))
  end.

(** The rests of the drafts with first tokens [xs]: independent drafts of length [j]. *)
Fixpoint tails_avg (j : nat) (c : list A) (xs : list A) (F : list (list A) -> R) : R :=
  match xs with
  | [] => F []
  | x :: xs' => draft_avg j (c ++ [x]) (fun t => tails_avg j c xs' (fun ts => F (t :: ts)))
  end.

(** The drafts with first tokens [xs] and rests [ts]. *)
Fixpoint zipcons (xs : list A) (ts : list (list A)) : list (list A) :=
  match xs with
  | [] => []
  | x :: xs' => (x :: hd [] ts) :: zipcons xs' (tl ts)
  end.

Lemma heads_avg_ext c m F G : (forall xs, F xs = G xs) -> heads_avg c m F = heads_avg c m G.
Proof.
  revert F G; induction m as [|m IH]; intros F G H; simpl; [apply H|].
  apply vsum_ext; intros x. f_equal. apply IH. intros xs; apply H.
Qed.

Lemma tails_avg_ext j c xs F G : (forall ts, F ts = G ts) -> tails_avg j c xs F = tails_avg j c xs G.
Proof.
  revert F G; induction xs as [|x xs IH]; intros F G H; simpl; [apply H|].
  apply draft_avg_ext; intros t _. apply IH. intros ts; apply H.
Qed.

Lemma multi_avg_ext k c N F G : (forall ds, F ds = G ds) -> multi_avg k c N F = multi_avg k c N G.
Proof.
  revert F G; induction N as [|N IH]; intros F G H; simpl; [apply H|].
  apply draft_avg_ext; intros d _. apply IH. intros ds; apply H.
Qed.

Lemma multi_avg_const k c N a : multi_avg k c N (fun _ => a) = a.
Proof.
  induction N as [|N IH]; simpl; [reflexivity|].
  rewrite (draft_avg_ext vocab q k c _ (fun _ => a)) by (intros; exact IH).
  apply draft_avg_const; exact Hq.
Qed.

Lemma tails_avg_const j c xs a : tails_avg j c xs (fun _ => a) = a.
Proof.
  induction xs as [|x xs IH]; simpl; [reflexivity|].
  rewrite (draft_avg_ext vocab q j _ _ (fun _ => a)) by (intros; exact IH).
  apply draft_avg_const; exact Hq.
Qed.

Lemma tails_avg_plus j c xs F G :
  tails_avg j c xs (fun ts => F ts + G ts) = tails_avg j c xs F + tails_avg j c xs G.
Proof.
  revert F G; induction xs as [|x xs IH]; intros F G; simpl; [reflexivity|].
  rewrite <- draft_avg_plus. apply draft_avg_ext; intros t _. apply IH.
Qed.

Lemma tails_avg_scal j c xs a F : tails_avg j c xs (fun ts => a * F ts) = a * tails_avg j c xs F.
Proof.
  revert F; induction xs as [|x xs IH]; intros F; simpl; [reflexivity|].
  rewrite <- draft_avg_scal. apply draft_avg_ext; intros t _. apply IH.
Qed.

Lemma heads_avg_swap j c' c m (H : list A -> list A -> R) :
  draft_avg j c' (fun t => heads_avg c m (fun xs => H t xs)) = heads_avg c m (fun xs => draft_avg j c' (fun t => H t xs)).
Proof.
  revert H; induction m as [|m IH]; intros H; simpl; [reflexivity|].
  rewrite draft_avg_vsum. apply vsum_ext; intros x. f_equal. apply IH.
Qed.

(** Drafts of length [j + 1]: first all the first tokens, then all the rests. *)
Lemma multi_avg_split j c m F :
  multi_avg (S j) c m F = heads_avg c m (fun xs => tails_avg j c xs (fun ts => F (zipcons xs ts))).
Proof.
  revert F; induction m as [|m IH]; intros F; simpl; [reflexivity|].
  rewrite draft_avg_S. apply vsum_ext; intros x. f_equal.
  rewrite (draft_avg_ext vocab q j _ _
             (fun t => heads_avg c m (fun xs => tails_avg j c xs (fun ts => F ((x :: t) :: zipcons xs ts))))).
  - apply heads_avg_swap.
  - intros t _. apply IH.
Qed.

Lemma iid_draft_heads c m F : iid_draft vocab (q c) m F = heads_avg c m (fun xs => F (map Some xs)).
Proof.
  revert F; induction m as [|m IH]; intros F; simpl; [reflexivity|].
  apply vsum_ext; intros x. f_equal. apply IH.
Qed.

Lemma heads_zipcons xs ts : map head_opt (zipcons xs ts) = map Some xs.
Proof. revert ts; induction xs as [|x xs IH]; intros ts; simpl; [reflexivity|]. rewrite IH; reflexivity. Qed.

(** Averaged over the rests, a function of the rests of the drafts that drafted [x] is an average
    over [count x] fresh drafts from [c ++ [x]]. *)
Lemma tails_pick j c xs x H :
  tails_avg j c xs (fun ts => H (tails_with x (zipcons xs ts)))
  = multi_avg j (c ++ [x]) (count_tok eq_dec x (map Some xs)) H.
Proof.
  revert H; induction xs as [|y xs IH]; intros H; simpl; [reflexivity|].
  destruct (eq_dec y x) as [->|Hne].
  - simpl. apply draft_avg_ext; intros t _. apply (IH (fun ds => H (t :: ds))).
  - rewrite (draft_avg_ext vocab q j _ _ (fun _ => multi_avg j (c ++ [x]) (count_tok eq_dec x (map Some xs)) H)).
    + apply draft_avg_const; exact Hq.
    + intros t _. apply IH.
Qed.

(** Averaging over the rests commutes with the node rule (which reads only the first tokens). *)
Lemma tails_avg_verify j c xs upd P Q toks (K : A -> list (list A) -> R) (E : A -> R) :
  tails_avg j c xs (fun ts => verify vocab upd P Q toks (fun x => K x ts) E)
  = verify vocab upd P Q toks (fun x => tails_avg j c xs (K x)) E.
Proof.
  revert P Q; induction toks as [|o toks IH]; intros P Q; simpl; [apply tails_avg_const|].
  rewrite tails_avg_plus, !tails_avg_scal, IH. f_equal. f_equal.
  destruct o as [x|]; simpl; [reflexivity|apply tails_avg_const].
Qed.

Lemma tails_avg_emit j c xs x (K : list (list A) -> Kont A) c0 n f :
  tails_avg j c xs (fun ts => emit x (K ts) c0 n f)
  = emit x (fun c' n' f' => tails_avg j c xs (fun ts => K ts c' n' f')) c0 n f.
Proof. unfold emit; destruct n; reflexivity. Qed.

Theorem rrs_upfront_eq_tree G j c m n f :
  multi_avg j c m (fun ds => walk G j c ds n f) = rrs_node vocab eq_dec p q (iid_draft vocab) q_keep G j c m n f.
Proof.
  revert c m n f; induction j as [|j IH]; intros c m n f.
  - simpl walk. rewrite multi_avg_const. reflexivity.
  - rewrite multi_avg_split. cbn [rrs_node]. rewrite iid_draft_heads.
    apply heads_avg_ext; intros xs. simpl walk.
    rewrite (tails_avg_ext j c xs _
      (fun ts => verify vocab q_keep (p c) (q c) (map Some xs)
         (fun x => emit x (fun c' n' f' => walk G j c' (tails_with x (zipcons xs ts)) n' f') c n f)
         (fun v => emit v G c n f)))
      by (intros ts; rewrite heads_zipcons; reflexivity).
    rewrite (tails_avg_verify j c xs q_keep (p c) (q c) (map Some xs)
               (fun x ts => emit x (fun c' n' f' => walk G j c' (tails_with x (zipcons xs ts)) n' f') c n f)).
    apply verify_ext; [|reflexivity]. intros x.
    rewrite tails_avg_emit. apply emit_ext. intros n' f' _.
    rewrite (tails_pick j c xs x (fun ds => walk G j (c ++ [x]) ds n' f')). apply IH.
Qed.

End Upfront.

Theorem rrs_upfront_iteration_lossless {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q -> iteration_lossless vocab p (upfront_iteration vocab eq_dec p q N k).
Proof.
  intros Hp Hq G M HG c n f Hn. unfold upfront_iteration.
  rewrite (rrs_upfront_eq_tree vocab eq_dec p q Hq G k c N n f).
  exact (rrs_iteration_lossless vocab eq_dec p q N k Hp Hq G M HG c n f Hn).
Qed.

(** The decoding loop with [N] i.i.d. drafts of length [k] sampled up front: every horizon. *)
Theorem rrs_upfront_lossless {A : Type} (vocab : list A) eq_dec (p q : Model A) (N k : nat) :
  is_model vocab p -> is_model vocab q ->
  forall fuel c n f, (n <= fuel)%nat ->
  decode (upfront_iteration vocab eq_dec p q N k) fuel c n f = target vocab p c n f.
Proof.
  intros Hp Hq fuel. apply decode_lossless. apply rrs_upfront_iteration_lossless; assumption.
Qed.
